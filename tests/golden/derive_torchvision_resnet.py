"""How tests/golden/torchvision_resnet.json was derived (run once; not part of the test run).

torchvision does not install beside CPU torch 2.13 (the 0.28.0 wheel's CUDA extension fails
at `import torchvision`), so tests/test_originals_classifiers.py compares our torchvision-
layout ResNets with outputs computed here by torchvision's own network code:

    pip download torchvision==0.28.0 --no-deps -d /tmp/tv && cd /tmp/tv && unzip -q torchvision-*.whl
    .venv/bin/python tests/golden/derive_torchvision_resnet.py /tmp/tv/torchvision

`torchvision/models/resnet.py` is imported from the unpacked wheel without running the
package's `__init__` (only the transform presets, weights metadata unused here, are stubbed).
Weights: `seeded_state` of the test module (float32), input: float64 uniform [0,1] from a
seeded generator, normalised with torchvision's ImageNet mean/std (as float32 values, as our
`Normalized` holds them), network run in float64 so the golden is machine-independent.
"""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from test_originals_classifiers import seeded_state  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision transforms/_presets.py
CASES = {  # plugin: (torchvision builder, kwargs, seed, input shape, input seed)
    "resnet-50": ("resnet50", {}, 50, [1, 3, 224, 224], 51),
    "resnet-18-binary": ("resnet18", {"num_classes": 2}, 18, [2, 3, 64, 64], 19),
}


def torchvision_resnet(root: str) -> types.ModuleType:
    for name, sub in (("torchvision", ""), ("torchvision.models", "/models"),
                      ("torchvision.transforms", "/transforms")):
        m = types.ModuleType(name)
        m.__path__ = [root + sub]
        sys.modules[name] = m
    presets = types.ModuleType("torchvision.transforms._presets")
    presets.ImageClassification = object  # type: ignore[attr-defined]
    sys.modules[presets.__name__] = presets
    import torchvision.models.resnet as tvr

    return tvr


def main(root: str) -> None:
    tvr = torchvision_resnet(root)
    out: dict[str, object] = {"derived": "tests/golden/derive_torchvision_resnet.py, torchvision 0.28.0 "
                                         "models/resnet.py, torch " + torch.__version__}
    for plugin, (builder, kwargs, seed, shape, input_seed) in CASES.items():
        net = getattr(tvr, builder)(**kwargs)
        shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        net.load_state_dict(seeded_state(shapes, seed))
        net = net.double().eval()
        x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(input_seed))
        mean = torch.tensor(MEAN).double().view(1, 3, 1, 1)
        std = torch.tensor(STD).double().view(1, 3, 1, 1)
        with torch.no_grad():
            logits = net((x - mean) / std)
        out[plugin] = {"seed": seed, "input": shape, "input_seed": input_seed,
                       "shapes": [[k, list(s)] for k, s in shapes.items()], "logits": logits.tolist()}
    (HERE / "torchvision_resnet.json").write_text(json.dumps(out, indent=None) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
