"""The `objx` command line. Bad input ends in one line on stderr, `objx: error: ...`, and exit
status 2, never a traceback."""

import argparse
import os
import sys

USAGE_ERROR = 2


class CLIError(Exception):
    """A problem with what the user gave (an argument, a file); main prints it as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the one-line form of every other CLI error."""

    def error(self, message):
        self.exit(USAGE_ERROR, f"objx: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _shape(letters: str):
    """An argparse type for 'NxV'-style shapes: as many positive integers as letters."""
    pattern = "x".join(letters)

    def parse(text: str) -> tuple:
        parts = text.lower().split("x")
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            dims = ()
        if len(dims) != len(letters) or min(dims) < 1:
            raise argparse.ArgumentTypeError(f"expected {pattern} with {len(letters)} whole numbers >= 1, "
                                             f"got {text!r}")
        return dims

    return parse


def _device(text: str) -> str:
    """cpu, cuda or cuda:N, and only a CUDA device this machine has."""
    import torch

    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r} asked for, but torch sees no CUDA device "
                                             f"(torch {torch.__version__})")
        if index and int(index) >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r} asked for, but torch sees {torch.cuda.device_count()} "
                                             "CUDA device(s)")
    return text


def _objective(text: str):
    from ..sft.objective import Objective

    try:
        return Objective.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    from ..distill.logits import METHODS
    from ..dpo.divergence import KINDS

    parser = _Parser(prog="objx", description="Fused, vocabulary-chunked training losses.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark every objective against PyTorch eager / compile / peers")
    bench.add_argument("--device", type=_device, help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--shape", action="append", metavar="NxV", type=_shape("NV"),
                       help="rows x vocabulary, repeatable (default: 2048x32000 on CPU; "
                            "8192x128256 and 8192x256000 on CUDA)")
    bench.add_argument("--linear-shape", action="append", metavar="NxDxV", type=_shape("NDV"),
                       help="fused LM-head rows x hidden x vocabulary, repeatable (default: 512x512x32000 on CPU; "
                            "8192x4096x128256 and 8192x2304x256000 on CUDA). Giving any shape option runs only "
                            "the families given")
    bench.add_argument("--distill-shape", action="append", metavar="NxV", type=_shape("NV"),
                       help="distillation on logits (default: 256x32000 on CPU, 8192x128256 on CUDA)")
    bench.add_argument("--linear-distill-shape", action="append", metavar="NxDxV", type=_shape("NDV"),
                       help="distillation fused with both LM heads (default: 256x256x32000 on CPU, "
                            "8192x2304x256000 on CUDA)")
    bench.add_argument("--method", action="append", choices=METHODS,
                       help="distillation method, repeatable (default: ttm, wttm, jsd on logits; ttm fused)")
    bench.add_argument("--divergence-shape", action="append", metavar="NxV", type=_shape("NV"),
                       help="vocabulary divergences, policy vs reference (default: 512x32000 on CPU, "
                            "8192x128256 on CUDA)")
    bench.add_argument("--kind", action="append", choices=KINDS,
                       help="vocabulary divergence kind, repeatable (default: kl, js, hellinger, renyi)")
    bench.add_argument("--dpo-shape", action="append", metavar="BxTxV", type=_shape("BTV"),
                       help="a full DPOKernelLoss step on B pairs of T tokens (default: 2x256x32000 on CPU, "
                            "8x1024x128256 on CUDA)")
    bench.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "float64"],
                       help="logits dtype (default: float32 on CPU, bfloat16 on CUDA)")
    bench.add_argument("--objective", action="append", type=_objective, help="objective to run, repeatable (default: all on logits; nll and -p fused)")
    bench.add_argument("--repeats", type=_positive_int, help="timed runs per case (median reported)")
    bench.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    bench.add_argument("--out", help="write the results as JSON here")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("info", help="print how objx was built")
    sel = sub.add_parser("select", help="pick an objective or a DPO kernel from data (SPEC §6)")
    sel_sub = sel.add_subparsers(dest="what", required=True)
    cap = sel_sub.add_parser("capability", help="capability regime and SFT objective from gold-token probabilities")
    cap.add_argument("--probs", required=True, help=".pt or .npy file of gold-token probabilities")
    dpo = sel_sub.add_parser("dpo", help="kernel choice from prompt/chosen/rejected embeddings")
    dpo.add_argument("--embeddings", required=True,
                     help=".pt file holding a dict with 'prompt', 'chosen' and 'rejected' [B, E] tensors")
    demo = sub.add_parser("demo", help="the capability continuum in miniature: pre-train a small transformer, "
                                       "fine-tune it with four objectives, check objx's recommendation (CPU, minutes)")
    demo.add_argument("--out", default="objx-demo", help="folder for table.txt, curves.png, results.json")
    demo.add_argument("--seeds", type=_positive_int, help="independent repetitions (default: 3; 1 with --quick)")
    demo.add_argument("--quick", action="store_true", help="a seconds-long smoke run; its numbers mean nothing")
    demo.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _demo(args) -> int:
    import dataclasses
    import os

    from . import demo

    config = demo.DemoConfig.quick() if args.quick else demo.DemoConfig()
    if args.seeds is not None:
        config = dataclasses.replace(config, seeds=tuple(range(args.seeds)))
    result = demo.run(config, progress=not args.quiet)
    os.makedirs(args.out, exist_ok=True)
    text = demo.table(result)
    print(text)
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        f.write(demo.to_json(result))
    if not args.no_plot:
        demo.plot(result, os.path.join(args.out, "curves.png"))
    print(f"\nwrote {args.out}/table.txt, results.json" + ("" if args.no_plot else ", curves.png"))
    return 0


def _load(option: str, path: str):
    """The object in a .pt (torch.load, weights only) or .npy file, or a CLIError saying why not."""
    import torch

    if not os.path.isfile(path):
        raise CLIError(f"{option}: no such file {path!r}")
    try:
        if path.endswith(".npy"):
            import numpy as np

            return torch.from_numpy(np.load(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        reason = f"{type(e).__name__}: {text.split('. ')[0]}" if text else type(e).__name__
        raise CLIError(f"{option}: cannot read {path!r} as a {'.npy' if path.endswith('.npy') else '.pt'} "
                       f"file ({reason})") from None


def _tensor(option: str, value, what: str):
    import torch

    if not isinstance(value, torch.Tensor):
        raise CLIError(f"{option}: expected {what} to be a tensor, got {type(value).__name__}")
    return value


def _select(args) -> int:
    from .. import select

    try:
        if args.what == "capability":
            probs = _tensor("--probs", _load("--probs", args.probs), "the file's content")
            report = select.measure_capability(probs)
        else:
            data = _load("--embeddings", args.embeddings)
            if not isinstance(data, dict):
                raise CLIError(f"--embeddings: expected a dict with 'prompt', 'chosen' and 'rejected' tensors, "
                               f"got {type(data).__name__}")
            missing = [k for k in ("prompt", "chosen", "rejected") if k not in data]
            if missing:
                raise CLIError(f"--embeddings: the dict has no {', '.join(repr(k) for k in missing)} "
                               f"(keys: {', '.join(repr(k) for k in data) or 'none'})")
            embeddings = [_tensor("--embeddings", data[k], repr(k)) for k in ("prompt", "chosen", "rejected")]
            report = select.select_kernel(*embeddings)
    except (ValueError, TypeError) as e:  # the selection's own checks of the data
        raise CLIError(str(e)) from None
    if args.what == "capability":
        objective = select.recommend_objective(report)
        print(f"{'tokens':<12} {report.count}")
        print(f"{'mean p':<12} {report.mean_p:.4f}")
        for q, v in report.quantiles.items():
            print(f"{f'p{int(q * 100)}':<12} {v:.4f}")
        print(f"{'regime':<12} {report.regime}")
        print(f"{'objective':<12} {objective.name}")
        print(f"{'reason':<12} {objective.reason}")
        return 0
    print(f"{'kernel':<12} {'PND':>9} {'PNC':>9} {'TAT':>9} {'NAG':>9}")
    for name, m in report.metrics.items():
        mark = "  <- best" if name == report.best else ""
        print(f"{name:<12} {m['PND']:>9.4f} {m['PNC']:>9.4f} {m['TAT']:>9.4f} {m['NAG']:>9.4f}{mark}")
    print(f"reason: {report.reason}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except CLIError as e:
        print(f"objx: error: {e}", file=sys.stderr)
        return USAGE_ERROR


def _run(args) -> int:
    if args.command == "bench":
        if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
            raise CLIError(f"--out: no folder {os.path.dirname(args.out)!r} to write {os.path.basename(args.out)!r} in")
        from . import bench

        return bench.main(args)
    if args.command == "select":
        return _select(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "info":
        import json

        from .. import build_info

        print(json.dumps(build_info(), indent=2))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
