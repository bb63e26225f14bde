import os

import matplotlib

matplotlib.use("Agg")
os.environ.setdefault("ONLINEMDL_QUICK", "1")
