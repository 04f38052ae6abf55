"""The documentation stays a user's documentation: the README is short, links resolve, and nothing in
the repository points at notes or documents that are not part of it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_BYTES = 25 * 1024
# Spelled in pieces so that this file does not match itself.
FORBIDDEN = ("PERF" + "-NOTES", "../" + "shared", "seed" + " 00")
SKIPPED_DIRS = {".git", ".venv", "node_modules", "data", "__pycache__", ".mypy_cache", ".pytest_cache",
                ".ruff_cache", "llmtuner.egg-info", "dist", "build"}
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def repository_files() -> list[Path]:
    """Tracked files and new ones git does not ignore; without git, every file outside build output."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout
        paths = [ROOT / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for p in ROOT.rglob("*") if not SKIPPED_DIRS.intersection(p.relative_to(ROOT).parts)]
    return [p for p in paths if p.is_file() and not SKIPPED_DIRS.intersection(p.relative_to(ROOT).parts)]


def markdown_docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    return {github_anchor(m) for m in re.findall(r"^#{1,6}\s+(.+)$", text, flags=re.M)}


def test_readme_is_at_most_25_kb() -> None:
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, (f"README.md is {size:,} bytes (limit {README_MAX_BYTES:,}): "
                                      "move depth to docs/<topic>.md and link it")


def test_no_file_mentions_documents_outside_the_repository() -> None:
    found = []
    for path in repository_files():
        data = path.read_bytes().lower()
        found += [f"{path.relative_to(ROOT)}: {word!r}" for word in FORBIDDEN if word.lower().encode() in data]
    assert not found, "say what the behaviour is instead of pointing outside the repository:\n" + "\n".join(found)


@pytest.mark.parametrize("doc", markdown_docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path_part, _, fragment = target.partition("#")
        linked = (doc.parent / path_part).resolve() if path_part else doc
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor in {linked.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_anchor_slugs_follow_github() -> None:
    assert github_anchor("Run on AWS") == "run-on-aws"
    assert github_anchor("Use it from the OpenAI client") == "use-it-from-the-openai-client"
    assert github_anchor("The `train.py` recipe: what it does") == "the-trainpy-recipe-what-it-does"


def setting_names() -> list[tuple[str, str]]:
    """(full environment name, its short `__FIELD` form or "") for every setting of app/config.py."""
    from pydantic import BaseModel

    from app.config import Settings

    names = []
    for name, info in Settings.model_fields.items():
        group = info.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names += [(f"LLMTUNER_{name.upper()}__{sub.upper()}", f"__{sub.upper()}") for sub in group.model_fields]
        else:
            names.append((f"LLMTUNER_{name.upper()}", ""))
    return names


def test_every_setting_is_documented() -> None:
    """In the README or docs/: the full name, or in a row that starts with the group's name, `__FIELD`."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in markdown_docs())
    missing = [full for full, short in setting_names()
               if full not in text and not (short and re.search(
                   rf"^\|[^\n]*`{re.escape(full[: -len(short)])}__[^\n]*`{re.escape(short)}`", text, flags=re.M))]
    assert not missing, "document these settings (README's settings table or docs/<topic>.md): " + ", ".join(missing)


def test_readme_names_only_real_settings() -> None:
    known = {full for full, _ in setting_names()}
    groups = {full.split("__")[0] + "__" for full in known if "__" in full}
    named = set(re.findall(r"`(LLMTUNER_[A-Z0-9_]+)", (ROOT / "README.md").read_text(encoding="utf-8")))
    unknown = sorted(n for n in named if n not in known and n not in groups)
    assert not unknown, f"README.md names settings app/config.py does not have: {unknown}"


def test_every_hyperparameter_is_documented() -> None:
    from app.training.schemas import Hyperparameters

    rows = set(re.findall(r"^\|[^|]*\|", (ROOT / "docs" / "training.md").read_text(encoding="utf-8"), flags=re.M))
    documented = {name for row in rows for name in re.findall(r"`([a-z0-9_]+)`", row)}
    missing = sorted(set(Hyperparameters.model_fields) - documented)
    assert not missing, f"add these hyperparameters to docs/training.md's table: {missing}"


def test_every_error_code_is_documented() -> None:
    """Each `code="..."` the app raises is named in the README's errors table or a docs/ page."""
    codes = {code for path in (ROOT / "app").rglob("*.py")
             for code in re.findall(r'\bcode="([a-z_]+)"', path.read_text(encoding="utf-8"))}
    text = "\n".join(p.read_text(encoding="utf-8") for p in markdown_docs())
    missing = sorted(code for code in codes if f"`{code}`" not in text)
    assert not missing, f"document these error codes (README's errors table or docs/<topic>.md): {missing}"
