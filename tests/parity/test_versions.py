"""One set of versions, tested here and run there.

training_scripts/requirements.txt (what the training toolkit installs before train.py and
evaluate.py), training_scripts/inference_requirements.txt (the model's code/requirements.txt,
what the inference toolkit installs) and pyproject's `local` extra pin exactly the versions this
test suite runs; the images in app/backends/sagemaker_images.py provide a torch and a Python those
pinned packages accept.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from app.backends import sagemaker_images as images

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "training_scripts"
GPU_ONLY = {"bitsandbytes"}  # never loaded by the CPU test suite


def _requirements(path: Path) -> list[Requirement]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


def _pins(reqs: list[Requirement]) -> dict[str, str]:
    out = {}
    for r in reqs:
        if r.name in GPU_ONLY:
            continue
        specs = list(r.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{r} is not pinned to one version"
        spec = specs[0]
        out[metadata.distribution(r.name).metadata["Name"].lower().replace("_", "-")] = spec.version
    return out


def test_requirement_files_pin_exactly_what_the_suite_runs() -> None:
    training = _pins(_requirements(SCRIPTS / "requirements.txt"))
    inference = _pins(_requirements(SCRIPTS / "inference_requirements.txt"))
    for name, version in training.items() | inference.items():
        assert metadata.version(name) == version, f"{name}: pinned {version}, the suite runs {metadata.version(name)}"
    assert {"transformers", "peft", "accelerate"} <= set(training) and {"transformers", "peft"} <= set(inference)
    # The inference container runs the same versions as the training container.
    assert {k: v for k, v in training.items() if k in inference} == inference
    # GPU-only packages are installed on Linux x86_64 (the DLCs) and nowhere else.
    for r in _requirements(SCRIPTS / "requirements.txt"):
        if r.name in GPU_ONLY:
            assert r.marker is not None and r.marker.evaluate(default_environment() | {"platform_system": "Linux",
                                                                                          "platform_machine": "x86_64"})


def test_pyproject_local_extra_pins_the_same_versions() -> None:
    local = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["local"]
    pins = _pins([r for r in map(Requirement, local) if r.name != "torch"])
    training = _pins(_requirements(SCRIPTS / "requirements.txt"))
    assert {k: v for k, v in training.items() if k in pins} == pins
    assert {"transformers", "peft", "accelerate"} <= set(pins)


def _torch_floor(dist: str) -> SpecifierSet:
    for raw in metadata.requires(dist) or []:
        r = Requirement(raw)
        if r.name == "torch":
            return r.specifier
    return SpecifierSet()


def test_images_ship_a_torch_and_python_the_pinned_packages_accept() -> None:
    pinned = _pins(_requirements(SCRIPTS / "requirements.txt"))
    for kind in ("training", "inference"):
        shipped = images.IMAGE_VERSIONS[kind]
        tag = images.TRAINING_TAG if kind == "training" else images.INFERENCE_TAG
        # The table's versions are the tag's.
        assert tag.startswith(shipped["torch"] + "-"), (kind, tag)
        assert f"-py{shipped['python'].replace('.', '')}-" in tag, (kind, tag)
        for dist in ("transformers", "accelerate", "peft"):
            assert metadata.version(dist) == pinned[dist]
            requires_python = SpecifierSet(metadata.metadata(dist)["Requires-Python"] or "")
            assert requires_python.contains(shipped["python"] + ".0"), (kind, dist, requires_python)
            floor = _torch_floor(dist)
            assert floor.contains(shipped["torch"]), f"{kind} image torch {shipped['torch']}: {dist} needs {floor}"
    # transformers keeps its torch floor behind the "torch" extra.
    floors = [Requirement(r) for r in metadata.requires("transformers") or [] if r.startswith("torch")]
    assert floors and all(f.specifier.contains(images.IMAGE_VERSIONS[k]["torch"])
                          for f in floors for k in ("training", "inference"))


def test_the_inference_image_has_no_toolkit_that_imports_removed_transformers_names() -> None:
    """The Hugging Face inference toolkit imports transformers.file_utils.is_tf_available, gone in
    transformers 5: the endpoint would never start; the PyTorch inference DLC's toolkit imports no
    transformers at all."""
    assert images.INFERENCE_REPOSITORY == "pytorch-inference"
    import sagemaker_pytorch_serving_container

    package = Path(sagemaker_pytorch_serving_container.__file__).parent
    assert not [p for p in package.rglob("*.py") if re.search(r"^\s*(from|import) transformers", p.read_text(), re.M)]

