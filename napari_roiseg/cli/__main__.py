"""``python -m napari_roiseg.cli ...`` (and ``torchrun -m napari_roiseg.cli segment ...``)."""

import sys

from .main import main

sys.exit(main())
