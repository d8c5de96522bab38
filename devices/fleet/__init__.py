"""A registered fleet brought up and supervised: SSH to boards, the board wheel, tunnels, launchers."""
