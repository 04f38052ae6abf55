"""Image URIs of the AWS Deep Learning Containers the cloud shape runs, per region.

A small table in the code: the `sagemaker` SDK knows these too, but it is 0.3-1 GB and slow to
import, so it is used only by `scripts/regenerate_image_uris.py`, which prints a new version of
the constants below. Settings override both images (`LLMTUNER_AWS__TRAINING_IMAGE_URI`,
`LLMTUNER_AWS__INFERENCE_IMAGE_URI`), e.g. for a private copy in your own ECR.

What runs in them is pinned by the requirement files, not by the images: the training toolkit
installs `training_scripts/requirements.txt` before train.py or evaluate.py starts, and the
inference toolkit installs the model's `code/requirements.txt` (`training_scripts/
inference_requirements.txt`) before the model server starts, so both run exactly the
transformers/peft/accelerate versions the test suite runs. The images provide Python, CUDA and
torch; `IMAGE_VERSIONS` records what each ships, and tests/parity checks them against the floors
of the pinned packages (transformers 5 needs torch >= 2.6 and Python >= 3.11).

Inference uses the plain PyTorch inference DLC (TorchServe + sagemaker-pytorch-inference), not the
Hugging Face one: the Hugging Face inference toolkit (2.6.0, the newest) imports
`transformers.file_utils.is_tf_available`, which transformers 5 removed, so that container cannot
start a model server once transformers 5 is installed. The PyTorch toolkit imports no transformers.

Source: aws/deep-learning-containers `available_images.md` and release notes (PyTorch Inference
2.6 on SageMaker; Hugging Face PyTorch Training 2.8.0), and the SDK's `image_uri_config` (the
registries of the regions that are not 763104351884).
"""

from __future__ import annotations

from typing import Literal

from app.config import Settings

# Repository and tag of each container (the same tag in every region).
TRAINING_REPOSITORY = "huggingface-pytorch-training"
TRAINING_TAG = "2.8.0-transformers4.56.2-gpu-py312-cu129-ubuntu22.04"
INFERENCE_REPOSITORY = "pytorch-inference"
INFERENCE_TAG = "2.6.0-gpu-py312-cu124-ubuntu22.04-sagemaker"

# What each image ships (its release notes). transformers is the image's own copy, replaced at
# start by the pinned one; the PyTorch inference image has none.
IMAGE_VERSIONS: dict[str, dict[str, str]] = {
    "training": {"python": "3.12", "torch": "2.8.0", "cuda": "12.9", "transformers": "4.56.2"},
    "inference": {"python": "3.12", "torch": "2.6.0", "cuda": "12.4", "torchserve": "0.12.0"},
}

# The ECR account that serves the DLCs, where it is not the usual one.
DEFAULT_REGISTRY = "763104351884"
REGISTRIES: dict[str, str] = {
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-northeast-3": "364406365360",
    "ap-southeast-3": "907027046896",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "eu-south-1": "692866216735",
    "me-central-1": "914824155844",
    "me-south-1": "217643126080",
    "us-gov-west-1": "442386744353",
}
# Regions where the DLCs are published (the rest have no copy: set the *_IMAGE_URI settings there).
REGIONS = (
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "sa-east-1",
    "eu-west-1", "eu-west-2", "eu-west-3", "eu-central-1", "eu-north-1", "eu-south-1",
    "ap-south-1", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-southeast-1",
    "ap-southeast-2", "ap-southeast-3", "ap-east-1", "af-south-1", "me-south-1", "me-central-1",
    "cn-north-1", "cn-northwest-1", "us-gov-west-1",
)

Kind = Literal["training", "inference"]


def default_image_uri(kind: Kind, region: str) -> str:
    repository, tag = (TRAINING_REPOSITORY, TRAINING_TAG) if kind == "training" else (INFERENCE_REPOSITORY,
                                                                                      INFERENCE_TAG)
    if region not in REGIONS:
        raise ValueError(
            f"no {kind} Deep Learning Container is known for region {region!r}; set "
            f"LLMTUNER_AWS__{kind.upper()}_IMAGE_URI to an image URI you can pull there"
        )
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{REGISTRIES.get(region, DEFAULT_REGISTRY)}.dkr.ecr.{region}.{domain}/{repository}:{tag}"


def image_uri(kind: Kind, region: str, settings: Settings) -> str:
    """The container for `kind`: the settings' override when set, else the table's."""
    override = settings.aws.training_image_uri if kind == "training" else settings.aws.inference_image_uri
    return override or default_image_uri(kind, region)
