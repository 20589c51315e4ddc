import sys

from engine.convert import main

sys.exit(main())
