"""tissue_oracle.policies"""
