"""KEDA external scaler (`externalscaler.ExternalScaler` gRPC): KEDA's proto, its generated code, the servicer
(`scaler`) and the `toposcale keda-probe` client (`probe`)."""
