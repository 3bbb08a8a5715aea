from bench.backup.run import main

raise SystemExit(main())
