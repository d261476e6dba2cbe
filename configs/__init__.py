"""The built-in configs: --config=NAME (or NAME:variant) finds NAME.py here."""
