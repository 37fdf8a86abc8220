-- Orthanc -> delineo: send each CT series to delineo's DICOM node once it is stable, i.e. once
-- no new image of it has arrived for "StableAge" seconds (orthanc.json). The node is the
-- modality "delineo" in "DicomModalities"; it contours the series and sends the RT Structure Set
-- and the DICOM SEG back to this Orthanc (delineo dicom-node --forward ORTHANC@host:4242).
-- Only CT is sent: the RTSTRUCT and SEG series that come back are not routed again.
--
-- The C-STORE runs as an Orthanc job (Asynchronous), listed under /jobs and in Orthanc Explorer's
-- "Jobs"; a job that failed (delineo down) can be resubmitted there: POST /jobs/<id>/resubmit.

function OnStableSeries(seriesId, tags, metadata)
   if tags['Modality'] == 'CT' then
      local job = ParseJson(RestApiPost('/modalities/delineo/store', DumpJson({
         Resources = { seriesId },
         Asynchronous = true
      }, true)))
      print('delineo: sending stable CT series ' .. tags['SeriesInstanceUID'] .. ' to the modality delineo (job ' .. job['ID'] .. ')')
   end
end
