"""The ODinW-13 sweep: its cost (cost.py) and the paper's numbers it is compared with."""
