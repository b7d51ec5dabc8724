"""The built-in plugins' declarations (torch-free, read at plan time).

Each entry points at its implementation; the declaration is what the grid validator,
the cost estimate and the report read.
"""
from __future__ import annotations

from .registry import Param, PluginSpec, register

# ---------------------------------------------------------------- datasets
register(PluginSpec(
    "dataset", "digits", "harness.data.digits:load",
    params={},
    capabilities=frozenset({"bundled"}),
    help="sklearn's bundled 8x8 digits, fixed held-out split (no download)",
))
_ROOT = Param("str", asset="dataset",
              help="local directory holding the data set in its official layout (never downloaded), "
                   "or asset:<name> under the asset directory")
_SIZE = Param("int", 256, low=1, high=4096,
              help="images are resized (shorter side) and center-cropped to size x size")
register(PluginSpec(
    "dataset", "cifar10", "harness.data.cifar:load_cifar10",
    params={"root": _ROOT},
    capabilities=frozenset({"local"}),
    help="CIFAR-10 test set: <root>/cifar-10-batches-py/test_batch (python version), 32x32",
))
register(PluginSpec(
    "dataset", "cifar100", "harness.data.cifar:load_cifar100",
    params={"root": _ROOT,
            "labels": Param("str", "fine", choices=("fine", "coarse"),
                            help="fine (100 classes) or coarse (20 superclasses) labels")},
    capabilities=frozenset({"local"}),
    help="CIFAR-100 test set: <root>/cifar-100-python/test (python version), 32x32",
))
register(PluginSpec(
    "dataset", "imagenet", "harness.data.imagenet:load",
    params={"root": _ROOT, "size": _SIZE},
    capabilities=frozenset({"local", "lazy"}),
    help="ImageNet validation set: <root>/val/<wnid>/*.JPEG, or <root>/val/*.JPEG with "
         "<root>/labels.txt; decoded per batch",
))
register(PluginSpec(
    "dataset", "celebahq", "harness.data.celebahq:load",
    params={"root": _ROOT, "size": _SIZE,
            "attribute": Param("str", help="binary label: a column of the attribute list, "
                                           "e.g. Eyeglasses or Smiling")},
    capabilities=frozenset({"local", "lazy"}),
    help="CelebA-HQ images with list_attr_celeba.txt; label = one attribute (0/1); decoded per batch",
))

# ---------------------------------------------------------------- classifiers
_CHECKPOINT = {
    "path": Param("str", asset="classifier",
                  help="local checkpoint (.safetensors, or .pt/.pth loaded with weights_only), "
                       "or asset:<name> under the asset directory"),
    "sha256": Param("str", "", help="expected sha256 of the file; empty = the catalogue's or "
                                    "`harness stage`'s record for an asset, else not checked"),
}
register(PluginSpec(
    "classifier", "digits-cnn", "harness.models.bundled:load_classifier",
    params={"path": Param("str", "", asset="classifier",
                          help="empty = the bundled weights; else a checkpoint of the same network "
                               "(e.g. one `harness train` wrote)"),
            "sha256": _CHECKPOINT["sha256"]},
    capabilities=frozenset({"bundled"}),
    help="small CNN trained on the digits by `harness train`, shipped in the package",
))
_CLASSES = {"classes": Param("int", 10, choices=(10, 100), help="outputs: 10 (CIFAR-10) or 100 (CIFAR-100)")}
register(PluginSpec(
    "classifier", "wrn-28-10", "harness.models.zoo:load_wrn_28_10", params={**_CHECKPOINT, **_CLASSES},
    help="WideResNet-28-10 (RobustBench wide_resnet.py keys), CIFAR-10/100, inputs in [0,1]",
))
register(PluginSpec(
    "classifier", "wrn-70-16", "harness.models.zoo:load_wrn_70_16", params={**_CHECKPOINT, **_CLASSES},
    help="WideResNet-70-16 (RobustBench dm_wide_resnet.py keys, Swish), CIFAR-10/100 "
         "normalisation inside, inputs in [0,1]",
))
register(PluginSpec(
    "classifier", "resnet-50", "harness.models.zoo:load_resnet50", params=dict(_CHECKPOINT),
    help="ResNet-50 (torchvision keys), ImageNet normalisation inside, resized to 224",
))
register(PluginSpec(
    "classifier", "resnet-18-binary", "harness.models.zoo:load_resnet18_binary", params=dict(_CHECKPOINT),
    help="ResNet-18 with 2 outputs (torchvision keys): a CelebA-HQ attribute classifier",
))
register(PluginSpec(
    "classifier", "resnet-18-cifar", "harness.models.zoo:load_resnet18_cifar", params=dict(_CHECKPOINT),
    help="CIFAR-10 ResNet-18 (AutoAttack/pyautoattack examples/resnet.py keys: shortcut, linear), "
         "no normalisation, inputs in [0,1]",
))

# ---------------------------------------------------------------- purifiers
_DENOISER = Param("str", "digits-ddpm", choices=("digits-ddpm",), asset="denoiser",
                  help="diffusion backbone: the bundled digits-ddpm, asset:<name> (a catalogued "
                       "backbone), or a local diffusers UNet2DModel folder")
_SAMPLER = {
    "sampler": Param("str", "ddpm", choices=("ddpm", "ddim"), help="reverse sampler"),
    "steps": Param("int", 0, low=0, help="reverse steps per round (respacing); 0 = every step"),
}
_TUCKER = {
    "tucker_patch": Param("int", 4, low=1, help="patch side"),
    "tucker_stride": Param("int", 2, low=1, help="patch stride"),
    "tucker_rank": Param("float", 0.5, low=0.0, help="cross-patch rank: >= 1 absolute, < 1 fraction"),
    "tucker_per": Param("str", "image", choices=("image", "batch"), help="one decomposition per image or per batch"),
}

register(PluginSpec(
    "purifier", "none", "harness.purify.pipeline:build",
    capabilities=frozenset({"deterministic"}),
    help="no defence: the bare classifier",
))
register(PluginSpec(
    "purifier", "tucker", "harness.purify.pipeline:build",
    params=dict(_TUCKER),
    capabilities=frozenset({"deterministic"}),
    help="Tucker low-rank patch denoising alone",
))
register(PluginSpec(
    "purifier", "lorid", "harness.purify.pipeline:build",
    params={
        "denoiser": _DENOISER,
        "t_s": Param("number", 0.1, low=0.0, help="diffusion time per round: step (int >= 1) or fraction of T"),
        "loops": Param("int", 3, low=1, high=1000, help="diffuse/denoise rounds"),
        **_SAMPLER,
        "tucker": Param("str", "none", choices=("none", "pre", "noisy", "every_loop"),
                        help="where the Tucker step runs"),
        **_TUCKER,
    },
    capabilities=frozenset({"stochastic", "diffusion"}),
    label=("t_s", "loops"),
    help="LoRID: L rounds of diffuse-then-denoise at an early time, optional Tucker step",
))
register(PluginSpec(
    "purifier", "diffpure", "harness.purify.pipeline:build",
    params={
        "denoiser": _DENOISER,
        "t_s": Param("number", 0.1, low=0.0, help="diffusion time t*: step or fraction of T"),
        **_SAMPLER,
    },
    capabilities=frozenset({"stochastic", "diffusion"}),
    label=("t_s",),
    help="DiffPure-style: one diffuse/denoise round at t* (DDPM ancestral or DDIM)",
))
register(PluginSpec(
    "purifier", "gdmp", "harness.purify.pipeline:build",
    params={
        "denoiser": _DENOISER,
        "t_s": Param("number", 0.1, low=0.0, help="diffusion time per round: step (int >= 1) or fraction of T"),
        "loops": Param("int", 4, low=1, high=1000, help="diffuse/denoise rounds"),
        **_SAMPLER,
        "guidance": Param("str", "mse", choices=("mse", "ssim"),
                          help="distance whose gradient pulls each reverse step toward the input"),
        "guidance_scale": Param("float", 1.0, low=0.0,
                                help="s in x_{t-1} mean − s·β·∇d(x_t, sqrt(ᾱ_t)·x_in), d summed over "
                                     "pixels; 1.0 pulls a round's mean ~20% toward the input at "
                                     "t_s=0.1 (mse); 0 = unguided"),
    },
    capabilities=frozenset({"stochastic", "diffusion"}),
    label=("t_s", "loops", "guidance", "guidance_scale"),
    help="GDMP (Wang et al. 2022): rounds whose reverse steps are guided toward the input "
         "(MSE or SSIM); ensemble paths with eval_runs",
))
register(PluginSpec(
    "purifier", "multistep", "harness.purify.pipeline:build",
    params={
        "denoiser": _DENOISER,
        "schedule": Param("list[number]", help="diffusion time of each round, e.g. [30, 30, 50]"),
        **_SAMPLER,
    },
    capabilities=frozenset({"stochastic", "diffusion"}),
    help="multi-step (gradual noise) purification: one round per listed t",
))

# ---------------------------------------------------------------- attacks
_BUDGET = {
    "norm": Param("str", "linf", choices=("linf", "l2"), help="threat model"),
    "eps": Param("float", low=0.0, help="budget on [0,1] images"),
}
_PGD_LOOP = {  # PGD's projected-ascent loop, shared by every attack that runs it
    "steps": Param("int", 20, low=0, help="iterations"),
    "step_size": Param("float", low=0.0, help="step size (Linf: per-pixel; L2: norm)"),
    "eot": Param("int", 1, low=1, help="purifications averaged per gradient (EOT)"),
    "random_start": Param("bool", True, help="start from a random point in the ball"),
}
_GRADIENT = Param("str", "exact", choices=("exact", "greybox"),
                  help="exact: through the whole defended model (every purification step); "
                       "greybox: the classifier alone, then purify")
register(PluginSpec(
    "attack", "none", "harness.attacks.none:attack",
    help="clean inputs",
))
register(PluginSpec(
    "attack", "pgd", "harness.attacks.pgd:attack",
    params={
        **_BUDGET,
        **_PGD_LOOP,
        "gradient": _GRADIENT,
    },
    capabilities=frozenset({"needs_gradients", "eot"}),
    label=("norm", "eps", "steps", "eot"),
    help="projected gradient descent (Madry et al.) with expectation over transformation",
))
register(PluginSpec(
    "attack", "autoattack", "harness.attacks.autoattack:attack",
    params={
        "version": Param("str", "standard", choices=("standard", "rand", "custom"),
                         help="standard: APGD-CE, APGD-T, FAB-T, Square; rand: APGD-CE, APGD-DLR with EOT; "
                              "custom: the `attacks` list"),
        "attacks": Param("list[str]", [], choices=("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"),
                         help="version custom only: the sub-attacks, in the order run"),
        **_BUDGET,
        "steps": Param("int", 100, low=1, high=100000, help="APGD and FAB iterations (AutoAttack: 100)"),
        "eot": Param("int", 0, low=0, high=1000,
                     help="purifications averaged per APGD gradient; 0 = the version's own (rand 20, else 1)"),
        "queries": Param("int", 5000, low=1, high=1000000, help="Square's queries per example (AutoAttack: 5000)"),
        "gradient": _GRADIENT,
    },
    capabilities=frozenset({"needs_gradients", "eot"}),
    label=("version", "norm", "eps"),
    help="AutoAttack (Croce & Hein 2020) via pyautoattack, against the defended model as one module",
))
register(PluginSpec(
    "attack", "bpda", "harness.attacks.bpda:attack",
    params={
        **_BUDGET,
        **_PGD_LOOP,
        "tucker_backward": Param("str", "identity", choices=("identity", "exact"),
                                 help="identity: the whole purifier is the identity in the backward pass; "
                                      "exact: only the diffusion is, the Tucker step keeps its gradient"),
    },
    capabilities=frozenset({"needs_gradients", "eot"}),
    label=("norm", "eps", "steps", "eot"),
    help="BPDA+EOT (Athalye et al.): full purification forward, straight-through backward; PGD steps",
))
register(PluginSpec(
    "attack", "square", "harness.attacks.square:attack",
    params={
        **_BUDGET,
        "queries": Param("int", 5000, low=1, high=1000000, help="model evaluations per example"),
    },
    capabilities=frozenset({"black_box"}),
    label=("norm", "eps", "queries"),
    help="Square attack (Andriushchenko et al.): query-based black box on the whole pipeline, no gradients",
))
