"""Forwarder: Hydra callback configs written for ``deflow_trl.sweep_report.FailedJobsReport`` keep working.

The callback is :class:`deflow_trl.app.sweep_report.FailedJobsReport`; imported, this module *is*
:mod:`deflow_trl.app.sweep_report` (the same object in ``sys.modules``).
"""
import sys

from deflow_trl.app import sweep_report as _app_sweep_report

sys.modules[__name__] = _app_sweep_report
