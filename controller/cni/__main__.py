"""python -m controller.cni: the vethguard-cni plugin (for runtimes and labs without the script)."""

import sys

from controller.cni.plugin import main

sys.exit(main())
