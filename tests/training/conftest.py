"""The training tests start from an uploaded dataset, as the end-to-end ones do."""

from tests.e2e.conftest import dataset  # noqa: F401 - fixture
