"""`python -m cnnexp.tracking <tracking uri> [port]` (make ui): print the dashboard links."""

import sys

from cnnexp.tracking.dashboard import UI_PORT, print_dashboards

uri, *port = sys.argv[1:]
print_dashboards(uri, int(port[0]) if port else UI_PORT)
