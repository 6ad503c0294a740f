import sys

from bench.jobs.run import main

sys.exit(main())
