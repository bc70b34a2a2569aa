"""`edged model ...`: design, data, training, export and checking of model packages.

Commands that need paddle import it lazily (the `build` extra); `archs`, `synth`,
`video` and `verify` work with the runtime dependencies alone.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from edged.cli.main import UsageError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("model", help="build, train, export and verify model packages",
                            description="Model toolkit: RegNet design space -> training -> Paddle Lite package.")
    cmds = parser.add_subparsers(dest="model_command", metavar="STEP")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    p = cmds.add_parser("archs", help="table of RegNet presets: stages, FLOPs, params")
    p.add_argument("--resolution", type=int, default=224, help="input size for the FLOP count (default 224)")
    p.add_argument("--classes", type=int, default=1000, help="classifier outputs (default 1000, as published)")
    p.add_argument("--budget", type=float, metavar="MFLOPS", help="only print the best preset under this budget")
    p.add_argument("--family", default="RegNetY", choices=["RegNetX", "RegNetY"], help="family for --budget")
    p.set_defaults(func=cmd_archs)

    p = cmds.add_parser("synth", help="render a class-per-folder inspection dataset")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=1, help="a different seed gives a disjoint set")
    p.add_argument("--size", type=int, default=224)
    p.set_defaults(func=cmd_synth)

    p = cmds.add_parser("video", help="render the sample video of parts passing under a camera")
    p.add_argument("--out", type=Path, required=True, help="an .mp4 path; labels go to <stem>.labels.csv")
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--parts", type=int, default=45)
    p.add_argument("--frames-per-part", type=int, default=8)
    p.set_defaults(func=cmd_video)

    p = cmds.add_parser("train", help="train or fine-tune a RegNet on a class-per-folder dataset")
    p.add_argument("--data", type=Path, required=True, help="training images: DIR/<label>/*.jpg")
    p.add_argument("--val", type=Path, help="validation images, same layout (reported each epoch)")
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoints; rerun to resume)")
    arch = p.add_mutually_exclusive_group()
    arch.add_argument("--arch", default=None, help="preset name, e.g. RegNetY-400MF (see `edged model archs`)")
    arch.add_argument("--budget", type=float, metavar="MFLOPS", help="best RegNetY under this FLOP budget")
    p.add_argument("--resolution", type=int, default=224, help="training input size (default 224)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine, with warmup)")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--mixup", type=float, default=0.0, help="Mixup Beta alpha (0 = off)")
    p.add_argument("--cutmix", type=float, default=0.0, help="CutMix Beta alpha (0 = off)")
    p.add_argument("--init", type=Path, help="fine-tune from this .pdparams (classifier re-initialised)")
    p.add_argument("--freeze-stages", type=int, default=0, help="with --init: freeze stem + first N stages")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = cmds.add_parser("export", help="export + INT8 quantize + convert + verify a trained run into a package")
    p.add_argument("--run", type=Path, required=True, help="a run directory written by `edged model train`")
    p.add_argument("--calibration", type=Path, required=True, help="calibration images (DIR/<label>/...)")
    p.add_argument("--test", type=Path, required=True, help="held-out labelled images for the top-1 figures")
    p.add_argument("--out", type=Path, required=True, help="package directory to create")
    p.add_argument("--name", required=True)
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--calibration-images", type=int, default=160)
    p.set_defaults(func=cmd_export)

    p = cmds.add_parser("verify", help="check a package (manifest, sha256, labels); optionally its accuracy")
    p.add_argument("package", type=Path)
    p.add_argument("--images", type=Path, help="labelled images: run the .nb for this machine and report top-1")
    p.set_defaults(func=cmd_verify)

    p = cmds.add_parser("recipe", help="rebuild firmware_models/ from scratch (the shipped model and video)")
    p.add_argument("--out", type=Path, default=Path("firmware_models"))
    p.add_argument("--work", type=Path, default=Path("build/recipe"), help="intermediate files (resumable)")
    p.add_argument("--scale", choices=["full", "tiny"], default="full", help="tiny: the CI-sized pipeline")
    p.set_defaults(func=cmd_recipe)


def cmd_archs(args: argparse.Namespace) -> int:
    from edged.models import regnet

    if args.budget:
        params, cx = regnet.best_under_budget(args.budget, args.family, args.classes, args.resolution)
        print(f"{params.name}: {cx.flops / 1e6:.1f} MFLOPs, {cx.params / 1e6:.2f} M params "
              f"(budget {args.budget:g} MFLOPs at {args.resolution}x{args.resolution})")
        return 0
    print(f"{'name':<15} {'depths':<16} {'widths':<22} {'MFLOPs':>8} {'Mparams':>8} {'paper':>12}")
    for name, params in regnet.PRESETS.items():
        st = regnet.stages(params)
        cx = regnet.complexity(params, args.classes, args.resolution)
        gf, mp = regnet.PUBLISHED[name]
        print(f"{name:<15} {str([s.depth for s in st]):<16} {str([s.width for s in st]):<22} "
              f"{cx.flops / 1e6:>8.1f} {cx.params / 1e6:>8.2f} {f'{gf:.1f}G/{mp:.2f}M':>12}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from edged.models import synth

    _positive(per_class=args.per_class, size=args.size)
    counts = synth.write_dataset(args.out, args.seed, args.per_class, args.size)
    print(f"wrote {sum(counts.values())} images to {args.out} ({', '.join(f'{k}={v}' for k, v in counts.items())})")
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    from edged.models import synth

    _positive(parts=args.parts, frames_per_part=args.frames_per_part)
    labels = synth.write_video(args.out, args.seed, args.parts, args.frames_per_part)
    print(f"wrote {len(labels)} frames to {args.out} and {synth.sidecar_path(args.out)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from edged.models import dataset, regnet

    _positive(resolution=args.resolution, epochs=args.epochs, batch_size=args.batch_size)
    if args.resolution % 32:
        raise UsageError(f"--resolution {args.resolution}: must be a multiple of 32 (RegNet downsamples 32x)")
    if args.freeze_stages and not args.init:
        raise UsageError("--freeze-stages needs --init (a checkpoint to fine-tune from)")
    params = regnet.resolve(args.arch or (None if args.budget else "RegNetY-400MF"), args.budget)
    train_set = dataset.load(args.data, args.resolution)
    val_set = dataset.load(args.val, args.resolution, train_set.classes) if args.val else None
    from edged.models.train import Trainer, TrainConfig  # paddle from here on

    cfg = TrainConfig(arch=asdict(params), classes=train_set.classes, resolution=args.resolution,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
                      mixup=args.mixup, cutmix=args.cutmix, freeze_stages=args.freeze_stages, seed=args.seed)
    result = Trainer(cfg, train_set, val_set, args.out, init_from=args.init).fit()
    print(json.dumps(result["history"][-1] if result["history"] else {}, indent=None))
    print(f"checkpoint: {result['checkpoint']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import numpy as np

    from edged.models import dataset, regnet

    state_file = args.run / "train_state.json"
    if not state_file.is_file():
        raise UsageError(f"{args.run}: not a training run directory (no train_state.json)")
    cfg = json.loads(state_file.read_text())["config"]
    labels = cfg["classes"]
    calibration = dataset.load(args.calibration, args.input_size, labels)
    pick = np.random.default_rng(0).permutation(len(calibration))[:args.calibration_images]
    calibration = dataset.ImageSet(calibration.images[pick], calibration.labels[pick], labels)
    test = dataset.load(args.test, args.input_size, labels)
    from edged.models import build  # paddle from here on

    manifest = build.export_package(args.run / "last.pdparams", regnet.RegNetParams(**cfg["arch"]), labels,
                                    args.input_size, calibration, test, args.name, args.version,
                                    args.run, args.out, build.training_summary(args.run))
    print(json.dumps(manifest["metrics"], indent=1))
    print(f"package: {args.out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from edged.models import package

    pkg = package.load_package(args.package)
    print(f"{pkg.name} {pkg.version}: {len(pkg.files)} files, sha256 ok, {pkg.num_classes} labels")
    if args.images:
        from edged.models import dataset
        from edged.models.lite_eval import run_lite

        images = dataset.load(args.images, pkg.preprocess.height, pkg.labels)
        x = dataset.to_tensor(images.images, pkg.preprocess.mean, pkg.preprocess.std)
        chosen = pkg.file_for()
        logits, _ = run_lite(pkg.path_of(chosen), x)
        top1 = float((logits.argmax(1) == images.labels).mean())
        print(f"{chosen.path}: top-1 {top1:.4f} on {len(images)} images "
              f"(manifest fp32 {pkg.manifest.get('metrics', {}).get('fp32_top1')})")
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    from edged.models import recipe

    chosen = recipe.recipe_by_name(args.scale)
    package_dir = recipe.run(chosen, args.work, args.out)
    print(f"package: {package_dir}\nsample video: {args.out / 'sample' / 'parts.mp4'}")
    return 0


def _positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")


