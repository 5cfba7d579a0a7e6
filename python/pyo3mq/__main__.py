from pyo3mq.cli import main

raise SystemExit(main())
