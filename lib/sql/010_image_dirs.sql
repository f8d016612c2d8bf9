-- vmops schema, version 10: where a worker's VM images may come from.
--
-- A launch spec names the kernel, initrd and disks a root-run hypervisor
-- opens.  Each worker lists the directories those files may come from;
-- vm-fleet launch checks every file before anything is reserved (inside one
-- of them once resolved, a regular file, owned by root or the running user,
-- not writable by group or others) and refuses the launch otherwise.
-- NULL: the built-in default (/var/lib/vmops/images and /boot, plus
-- $VMOPS_IMAGE_DIRS on the host that launches; see vmops(7)).
-- A listed directory is an absolute, normalised path, never "/" and never
-- under /dev, /proc or /sys.  Whoever can write this column can widen it:
-- the type and owner checks hold whatever it says (vmops(7) SECURITY).
CREATE FUNCTION vmops_image_dir_ok(d text) RETURNS boolean
	LANGUAGE sql IMMUTABLE STRICT AS $$
	SELECT d ~ '^(/[^/]+)+$' AND d !~ '/\.\.?(/|$)' AND length(d) < 1024
	   AND d !~ '^/(dev|proc|sys)(/|$)' AND d !~ '[:\n]'
$$;
CREATE FUNCTION vmops_image_dirs_ok(ds text[]) RETURNS boolean
	LANGUAGE sql IMMUTABLE STRICT AS $$
	SELECT bool_and(vmops_image_dir_ok(d)) FROM unnest(ds) AS d
$$;
ALTER TABLE workers ADD COLUMN image_dirs text[]
	CHECK (image_dirs IS NULL OR (cardinality(image_dirs) BETWEEN 1 AND 32
	       AND array_position(image_dirs, NULL) IS NULL
	       AND vmops_image_dirs_ok(image_dirs)));
