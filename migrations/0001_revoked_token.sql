-- The platform's RevokedToken table (platform-protocol.md §1.3), created here for local runs
-- and tests only: in front of the platform, the gateway binds the platform's own D1 database,
-- whose migrations own this table. The gateway only reads it.
CREATE TABLE IF NOT EXISTS "RevokedToken" (
  "id" TEXT NOT NULL PRIMARY KEY,
  "tokenHash" TEXT NOT NULL,
  "userId" TEXT NOT NULL,
  "reason" TEXT,
  "revokedAt" INTEGER NOT NULL,
  "expiresAt" INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS "RevokedToken_tokenHash_key" ON "RevokedToken" ("tokenHash");
