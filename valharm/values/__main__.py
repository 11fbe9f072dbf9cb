"""`python -m valharm.values list ...`: print value distributions as CSV."""
from valharm.values.distributions import main

main()
