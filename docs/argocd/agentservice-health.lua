-- Argo CD health check for agentops.dev/AgentService.
-- Healthy: Ready and no rollout in flight. Progressing: not yet observed, rolling out, or
-- a canary moving through its steps. Suspended: a canary paused (manual gate or too little
-- data). Degraded: the spec cannot be served, a secret is missing, or a canary rolled back.
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function message_of(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

for _, ctype in ipairs({"SpecInvalid", "SecretMissing", "ChildConflict"}) do
  local c = condition(status, ctype)
  if is_true(c) then
    hs.status = "Degraded"
    hs.message = message_of(c, ctype)
    return hs
  end
end

local canary = status.canary
if canary ~= nil then
  if canary.phase == "RolledBack" then
    hs.status = "Degraded"
    hs.message = "Canary rolled back: " .. (canary.message or "see status.canary.lastAnalysis")
    return hs
  end
  if canary.phase == "Paused" then
    hs.status = "Suspended"
    hs.message = "Canary paused at " .. tostring(canary.weight or 0) .. "%: " .. (canary.message or "")
    return hs
  end
  if canary.phase == "Progressing" then
    hs.status = "Progressing"
    hs.message = "Canary at " .. tostring(canary.weight or 0) .. "%"
    return hs
  end
end

local degraded = condition(status, "Degraded")
if is_true(degraded) then
  hs.status = "Degraded"
  hs.message = message_of(degraded, "Degraded")
  return hs
end

local ready = condition(status, "Ready")
if is_true(ready) then
  hs.status = "Healthy"
  hs.message = message_of(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = message_of(condition(status, "Progressing"), message_of(ready, "Waiting for pods to become ready"))
return hs
