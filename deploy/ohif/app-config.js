/** OHIF viewer configuration for medsearch (docker-compose `viewer`, tests/viewer/).
 *
 * One data source: the PACS's DICOMweb, at /dicom-web on the viewer's own origin. The
 * server that serves this viewer proxies that path to Orthanc and adds Orthanc's
 * credentials, so the browser needs none and makes no cross-origin requests.
 * medsearch's result links open /viewer?StudyInstanceUIDs=...&initialSeriesInstanceUID=...
 * &initialSOPInstanceUID=...: the study, with the result's series in the viewport at the
 * result's image.
 */
window.config = {
  name: 'medsearch',
  routerBasename: null,
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'pacs',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'pacs',
      configuration: {
        friendlyName: 'medsearch PACS (Orthanc)',
        name: 'orthanc',
        wadoUriRoot: '/dicom-web',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
