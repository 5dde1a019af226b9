"""tissue_oracle.oracles"""
