"""Records shared by every side: artifacts, run options, measurement results and outcomes.

Standard library only at import time (numpy only inside the functions that need it).
"""
