"""Checks that every CUDA kernel's bfloat16 instantiation in a built objx library moves its rows
with 16-byte vector loads (`ld.global[.nc].v4` / `.v2.u64`), from the PTX that cuobjdump extracts.

    python bench/ptx_loads.py [path/to/libobjx_ops.so]

Prints one line per kernel (its vector loads and stores) and exits 1 if one has no vector load,
2 if the library has no PTX or no cuobjdump is found (PATH, CUDA_HOME, or triton's copy)."""

import os
import re
import shutil
import subprocess
import sys


def cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    candidates = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")]
    try:
        import triton
        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if os.path.isfile(c)), None)


def kernels(ptx):
    """(demangled name, PTX body) of every entry."""
    parts = re.split(r"\n(?=(?:\.visible |\.weak )?\.entry )", ptx)
    entries = [(m.group(1), p) for p in parts if (m := re.match(r"(?:\.visible |\.weak )?\.entry\s+(\S+)\(", p))]
    names = subprocess.run(["c++filt"], input="\n".join(n for n, _ in entries), capture_output=True, text=True,
                           check=True).stdout.replace("(anonymous namespace)::", "").splitlines()
    return list(zip(names, (p for _, p in entries)))


def main():
    library = sys.argv[1] if len(sys.argv) > 1 else None
    if library is None:
        import objx._library
        library = objx._library.LIBRARY
    tool = cuobjdump()
    if tool is None:
        print("ptx_loads: no cuobjdump found", file=sys.stderr)
        return 2
    ptx = subprocess.run([tool, "--dump-ptx", library], capture_output=True, text=True).stdout
    bf16 = [(name, body) for name, body in kernels(ptx) if "c10::BFloat16" in name.split("(")[0]]
    if not bf16:
        print(f"ptx_loads: no bfloat16 kernel PTX in {library}", file=sys.stderr)
        return 2
    missing = 0
    for name, body in sorted(bf16):
        loads = sorted(set(re.findall(r"ld\.global[.\w]*?\.(?:v4\.\w+|v2\.[ub]64)", body)))
        stores = sorted(set(re.findall(r"st\.global[.\w]*?\.(?:v4\.\w+|v2\.[ub]64)", body)))
        kernel = re.sub(r".*::", "", name.split("<")[0]) + "<bf16>"
        print(f"{'ok ' if loads else 'NO '} {kernel:55s} loads {', '.join(loads) or '-':28s} "
              f"stores {', '.join(stores) or '-'}")
        missing += not loads
    print(f"ptx_loads: {len(bf16) - missing}/{len(bf16)} bfloat16 kernels load 16 bytes at a time")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
