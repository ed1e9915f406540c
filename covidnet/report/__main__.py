"""``python -m covidnet.report <sweep dir>``: see covidnet.report."""

import sys

from covidnet.report.write import main

sys.exit(main())
