"""Forwarder: the summary tool is :mod:`deflow_trl.app.summarize`; ``python -m deflow_trl.summarize`` keeps working.

Imported, this module *is* :mod:`deflow_trl.app.summarize` (the same object in ``sys.modules``).
"""
import sys

if __name__ == "__main__":
    from deflow_trl.extras import check_app_extra

    check_app_extra("python -m deflow_trl.summarize")
    from deflow_trl.app.summarize import main

    main()
else:
    from deflow_trl.app import summarize as _app_summarize

    sys.modules[__name__] = _app_summarize
