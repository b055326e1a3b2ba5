import sys

from featviz.cli import main

sys.exit(main())
