-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d), as POSTGRES_USER:
-- one database for the Optuna studies (the sweeps' state) and one for the MLflow tracking server.
-- Both are owned by POSTGRES_USER, the role every service connects as.
CREATE DATABASE optuna;
CREATE DATABASE mlflow;
