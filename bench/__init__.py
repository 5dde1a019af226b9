"""tissue_oracle.bench"""
