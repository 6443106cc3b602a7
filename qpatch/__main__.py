from qpatch.cli import main

raise SystemExit(main())
