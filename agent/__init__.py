"""tissue_oracle.agent"""
