import math

value = math.sqrt(-1)  # line 3: raises at import
