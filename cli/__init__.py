"""The `sptelab` command line: a shell over `engine`, as the web app is another (see cli.main)."""
