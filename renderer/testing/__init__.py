"""Test-only code, in one place: fault injection (faults.py), the test video reader (videos.py) and the headless
browser of the gallery's tests (browser.py).

Production code never imports this package directly: it reaches fault injection through the one thin hook in
renderer/fault_hook.py, which does nothing unless RENDER_FAULTS is set. It ships inside the package because the
faults strike inside Ray actors and encode workers, which import the installed package.
"""
