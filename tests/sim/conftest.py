"""Tests of the simulation build itself (make test-cuda-sim): its scheduler, its memory checks and
its launch report. Other builds have no simulator, so these files are collected only in it."""

import os

import objx

_info = objx.build_info()
collect_ignore = []
if not _info["cuda_sim"]:
    collect_ignore += ["test_simulator.py", "test_memcheck.py", "test_launches.py"]
if _info["sanitize"] != "address":
    collect_ignore += ["test_memcheck.py"]
if os.environ.get("OBJX_SIM_CHECK_LAUNCHES") != "1":  # needs the report of a whole suite's run
    collect_ignore += ["test_launches.py"]
