from tscope.cli.main import entry

entry()
