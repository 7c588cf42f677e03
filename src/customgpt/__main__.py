from customgpt.cli import main

raise SystemExit(main())
