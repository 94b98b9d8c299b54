import sys

from bench.clients.run import main

sys.exit(main())
