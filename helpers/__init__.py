# The modules the scripts at the top of the repo import: their machinery, so each script reads as its method.
# Nothing is defined here; import a module by name, e.g. `from helpers import common`.
