"""tissue_oracle.store"""
