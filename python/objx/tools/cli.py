"""The `objx` command line."""

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="objx", description="Fused, vocabulary-chunked training losses.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark every objective against PyTorch eager / compile / peers")
    bench.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--shape", action="append", metavar="NxV",
                       help="rows x vocabulary, repeatable (default: 2048x32000 on CPU; "
                            "8192x128256 and 8192x256000 on CUDA)")
    bench.add_argument("--linear-shape", action="append", metavar="NxDxV",
                       help="fused LM-head rows x hidden x vocabulary, repeatable (default: 512x512x32000 on CPU; "
                            "8192x4096x128256 and 8192x2304x256000 on CUDA). Giving any shape option runs only "
                            "the families given")
    bench.add_argument("--distill-shape", action="append", metavar="NxV",
                       help="distillation on logits (default: 256x32000 on CPU, 8192x128256 on CUDA)")
    bench.add_argument("--linear-distill-shape", action="append", metavar="NxDxV",
                       help="distillation fused with both LM heads (default: 256x256x32000 on CPU, "
                            "8192x2304x256000 on CUDA)")
    bench.add_argument("--method", action="append",
                       help="distillation method, repeatable (default: ttm, wttm, jsd on logits; ttm fused)")
    bench.add_argument("--divergence-shape", action="append", metavar="NxV",
                       help="vocabulary divergences, policy vs reference (default: 512x32000 on CPU, "
                            "8192x128256 on CUDA)")
    bench.add_argument("--kind", action="append",
                       help="vocabulary divergence kind, repeatable (default: kl, js, hellinger, renyi)")
    bench.add_argument("--dpo-shape", action="append", metavar="BxTxV",
                       help="a full DPOKernelLoss step on B pairs of T tokens (default: 2x256x32000 on CPU, "
                            "8x1024x128256 on CUDA)")
    bench.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "float64"],
                       help="logits dtype (default: float32 on CPU, bfloat16 on CUDA)")
    bench.add_argument("--objective", action="append", help="objective to run, repeatable (default: all on logits; nll and -p fused)")
    bench.add_argument("--repeats", type=int, help="timed runs per case (median reported)")
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
    demo.add_argument("--seeds", type=int, help="independent repetitions (default: 3; 1 with --quick)")
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
        if args.seeds < 1:
            raise SystemExit("objx demo: --seeds must be at least 1")
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


def _load(path: str):
    import torch

    if path.endswith(".npy"):
        import numpy as np

        return torch.from_numpy(np.load(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _select(args) -> int:
    from .. import select

    if args.what == "capability":
        report = select.measure_capability(_load(args.probs))
        objective = select.recommend_objective(report)
        print(f"{'tokens':<12} {report.count}")
        print(f"{'mean p':<12} {report.mean_p:.4f}")
        for q, v in report.quantiles.items():
            print(f"{f'p{int(q * 100)}':<12} {v:.4f}")
        print(f"{'regime':<12} {report.regime}")
        print(f"{'objective':<12} {objective.name}")
        print(f"{'reason':<12} {objective.reason}")
        return 0
    data = _load(args.embeddings)
    report = select.select_kernel(data["prompt"], data["chosen"], data["rejected"])
    print(f"{'kernel':<12} {'PND':>9} {'PNC':>9} {'TAT':>9} {'NAG':>9}")
    for name, m in report.metrics.items():
        mark = "  <- best" if name == report.best else ""
        print(f"{name:<12} {m['PND']:>9.4f} {m['PNC']:>9.4f} {m['TAT']:>9.4f} {m['NAG']:>9.4f}{mark}")
    print(f"reason: {report.reason}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
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
