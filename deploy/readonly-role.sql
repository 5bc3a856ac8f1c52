-- A read-only role for downstream apps: they may read bookable_now, bookable_at(),
-- opportunity_status and the harvester tables, and change nothing.
-- Run as the database owner, after `harvester migrate`:  psql "$DATABASE_URL" -f deploy/readonly-role.sql
-- (on a read replica this role exists too: roles and grants replicate with the database).
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'harvester_reader') THEN
    CREATE ROLE harvester_reader NOLOGIN;
  END IF;
END
$$;
GRANT USAGE ON SCHEMA public, harvester TO harvester_reader;
GRANT SELECT ON public.bookable_now, public.opportunity_status TO harvester_reader;
GRANT EXECUTE ON FUNCTION public.bookable_at(timestamptz) TO harvester_reader;
GRANT EXECUTE ON FUNCTION public.bookable_near(float8, float8, float8, timestamptz) TO harvester_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA harvester TO harvester_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA harvester GRANT SELECT ON TABLES TO harvester_reader;
-- An app's login, inheriting the reader's rights:
--   CREATE ROLE booking_app LOGIN PASSWORD '...' IN ROLE harvester_reader;
