"""The test suite: `python test_smoke.py` runs tests/ with pytest (extra arguments go to pytest);
`python test_smoke.py --quick` leaves out the end-to-end runs marked slow.

tests/test_schedules.py, test_losses.py, test_samplers.py, test_unet.py check the kernel's math against
closed forms, each test able to fail for the bug it names; test_structure.py its shape (no imports from
the shell, short functions). The others run every script end to end on tiny settings, every loader on
fixtures in the real on-disk formats, bad input and faults. Checks on the real datasets in ../shared/data
skip when it is absent."""
import os
import sys

import pytest

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    quick = ["-m", "not slow"] if "--quick" in sys.argv else []
    extra = [a for a in sys.argv[1:] if a != "--quick"]
    sys.exit(pytest.main([os.path.join(here, "tests"), "-q", "-p", "no:cacheprovider", "--rootdir", here, *quick, *extra]))
