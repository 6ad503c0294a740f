import sys

from bench.shutdown.run import main

sys.exit(main())
