"""tissue_oracle.tools"""
