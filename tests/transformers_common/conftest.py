# The vendored transformers files hold mixins and testers, not tests of their own: pytest does not collect them.
collect_ignore_glob = ["*.py", "*/*.py", "*/*/*.py"]
