"""One module per ``adntn`` verb; each defines ``register(subparsers)``.

A verb's handler is stored as ``handler`` in its parser defaults and receives the
parsed ``argparse.Namespace``; it returns an exit code.
"""
