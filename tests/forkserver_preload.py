"""Imported by the fork server behind `run_forked` (conftest.py); not a test module, so pytest does not collect it.
It composes the config once, so every forked `nin` starts with Hydra's plugins found and its parsers warm (about
0.3 s less CPU per process).

Pure Python only: torch must not start its OpenMP threads in a process that forks. Under pytest it does nothing.
"""

import sys

if "pytest" not in sys.modules:
    from nin_cli.overrides import load_config
    from nin_cli.runs import resume_overrides

    load_config(resume_overrides(["dataset=synthetic", "trainer.epochs=1"]))
